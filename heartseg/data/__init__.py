"""Stage 1, files to cases: a dataset folder (MSD or nnU-Net v2 raw) read into a checked :class:`DatasetSpec`.

Takes a dataset folder, a scan or a folder of scans; gives cases (image and label paths), their headers'
geometry (``fingerprint``), the checks every file passes (``validation``), NIfTI voxels as arrays or TorchIO
subjects in the scan's own grid (``reading``), training/validation splits that keep a patient's scans on one
side (``splits``), Task02_Heart's download and the built-in synthetic dataset. Nothing here resamples.
"""
