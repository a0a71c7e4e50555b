"""Inference on a user's own video.

    keypoint_files.py   users' 2D keypoint files (OpenPose, COCO results, 3DPW) -> detections
    tracking.py         detections linked into per-person tracks
"""
