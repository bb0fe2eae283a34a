"""Measures of a mask and its scan, used while predicting and after: quality control and the pages that show it.

Takes a probability map, a mask and the scan; gives each structure's measures and predicted Dice with the
reasons for a flag (``qc``), the review page and its pictures (``review``), and TensorBoard's validation
overlay (``overlay``). It knows nothing of models or runs, so inference and training both use it.
"""
