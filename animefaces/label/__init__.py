"""Labelling with active learning: a local web page that shows the frames that matter next.

``store`` reads and writes the manifest CSV (atomically, with a version stamp and a session
lock), ``active`` chooses frames and estimates accuracy, ``session`` ties them to the feature
cache and the background refit, ``interop`` converts to and from Label Studio JSON and CSV and
writes a sweep-ready manifest, ``server`` is the HTTP layer (Starlette + uvicorn, an optional
extra: ``pip install animefaces[label]``). Nothing else in the package imports this one.
"""
