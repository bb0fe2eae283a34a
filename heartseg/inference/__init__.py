"""Stage 4, a model applied to scans: sliding windows, test-time mirroring, ensembles, post-processing and export.

Takes a checkpoint (or an exported ONNX/TorchScript file, or several: an ensemble) and scans; gives
probabilities and masks in each scan's exact grid (``prediction``), scored against references where given,
the chosen post-processing (``postprocessing``), exported networks (``export``) and the prediction folder's
files and records (``prediction_folder``). Training's validation uses the same sliding window.
"""
