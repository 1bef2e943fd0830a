"""Data in: image decoding (images), manifests and folder trees -> records (datasets),
video sampling with PyAV (video), and the frames and crops writers (frames, crops).
"""
