"""Classifiers on features: SVM grids and selection (svm), calibration and the abstain band
(calibration), the out-of-domain guard (ood) and its probe images (probes), face time
ranges from per-frame scores (ranges), and saving / loading models (persist: the model
and its files; arrays: the pickle-free format; modelstore: the models folder).
"""
