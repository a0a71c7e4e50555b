"""Inference on a user's own video (run_infer.py; docs/inference.md).

- tracking.py: detections (data_pipelines/keypoint_files.py) linked into per-person tracks
- people.py: a detection -> the training crop and window; head outputs -> the full image
- camera.py: the model's crop camera <-> the full image's camera
- model_source.py: which model a checkpoint is (training workdir, HMR 2.0 / HaMeR import)
- runner.py: decode + crop, windows through the jitted model, per-person rows, jitter
- overlay.py, video_io.py: the overlay video with the CPU renderer; frames in, .mp4 out
"""
