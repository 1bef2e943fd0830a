"""Features: the backbone registry (backbones), weight files (weights), how a backbone is run
(settings), batched extraction (extract), a whole dataset through the cache (dataset),
the content-addressed feature cache (cache) and its file-hash index (fileindex).
"""
