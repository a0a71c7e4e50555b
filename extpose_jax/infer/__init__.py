"""Inference on a user's own video.

tracking.py   detections (data_pipelines/keypoint_files.py) linked into per-person tracks
camera.py     the model's crop camera back to the full image's camera
"""
