"""Frames in (a video file or a folder of images) and an overlay video out, with OpenCV.

OpenCV is what every pose demo reads video with, and its wheels carry FFmpeg, so nothing else
is needed (no OpenGL, no system FFmpeg). A video whose frame count the container gets wrong is
read to its end; the count that matters is the number of frames decoded.
"""

from __future__ import annotations

import os
import secrets

import cv2
import numpy as np

from extpose_jax import errors

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


class VideoError(errors.DataFileError):
    """A video or image folder that cannot be read; the message names it."""


class Frames:
    """Iterates (index, RGB uint8 frame) over a video file or a sorted folder of images.

    size_wh / fps are known on opening (fps: the container's, 30 for an image folder); every
    frame must have that size.
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            names = sorted(n for n in os.listdir(self.path) if n.lower().endswith(IMAGE_EXTENSIONS))
            if not names:
                raise VideoError(
                    f'{self.path}: no {"/".join(IMAGE_EXTENSIONS)} images in the folder'
                )
            self.files, self.fps = [os.path.join(self.path, n) for n in names], 30.0
            first = self._read_image(self.files[0])
            self.size_wh = (first.shape[1], first.shape[0])
        elif not os.path.isfile(self.path):
            raise FileNotFoundError(f'--video {self.path}: no such file or folder')
        else:
            self.files = None
            cap = cv2.VideoCapture(self.path)
            ok, first = cap.read() if cap.isOpened() else (False, None)
            fps = cap.get(cv2.CAP_PROP_FPS)
            cap.release()
            if not ok:
                raise VideoError(f'{self.path}: not a video OpenCV can decode (no first frame)')
            self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else 30.0
            self.size_wh = (first.shape[1], first.shape[0])

    def _read_image(self, path: str) -> np.ndarray:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise VideoError(f'{path}: not an image OpenCV can decode')
        return bgr

    def _check(self, bgr, where: str) -> np.ndarray:
        if (bgr.shape[1], bgr.shape[0]) != self.size_wh:
            raise VideoError(
                f'{where}: frame size {bgr.shape[1]}x{bgr.shape[0]}, the first frame is '
                f'{self.size_wh[0]}x{self.size_wh[1]}'
            )
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __iter__(self):
        if self.files is not None:
            for i, path in enumerate(self.files):
                yield i, self._check(self._read_image(path), path)
            return
        cap = cv2.VideoCapture(self.path)
        try:
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    return
                yield i, self._check(bgr, f'{self.path} frame {i}')
                i += 1
        finally:
            cap.release()


class VideoWriter:
    """An .mp4 (mp4v) written under a temporary name and renamed on close(): a run that stops
    half-way leaves no half-written video under the final name. abort() removes it."""

    def __init__(self, path: str, fps: float, size_wh):
        self.path = os.fspath(path)
        self.tmp = f'{self.path}.{secrets.token_hex(4)}.tmp.mp4'
        self.size_wh = tuple(int(v) for v in size_wh)
        self.writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*'mp4v'), fps, self.size_wh)
        if not self.writer.isOpened():
            raise VideoError(f'{self.path}: OpenCV cannot open an mp4v video writer here')
        self.count = 0

    def write(self, rgb: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        self.count += 1

    def close(self) -> None:
        self.writer.release()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.writer.release()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def count_frames(path: str) -> int:
    """Frames an .mp4 decodes to (what a test or a user checks an overlay by)."""
    cap = cv2.VideoCapture(os.fspath(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n
