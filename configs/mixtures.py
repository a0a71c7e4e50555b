"""The paper-scale training mixtures: (records name, sampling weight) pairs for data.datasets.

Weights are relative (the pipeline normalises them over what remains after data.drop). Names
are the records folders under data.root; data_pipelines/known_datasets.py says which converter
makes each, and a run refuses to start while a listed one is missing (unless
--config.data.drop names it).

Sources: HMR 2.0's and HaMeR's published mixes are `../shared/spec/reference_models.md` §5.4.
The paper (`paper.md`, "body data" / "hand data") names its datasets but gives no weights: the
3DPW and HInt shares below are this project's choice, marked where they are made.
"""

# HMR 2.0's mix (4D-Humans data/mix_all.yaml, via the spec): all image tars; sums to 1.0.
HMR2 = (
    ('h36m_train', 0.1),
    ('mpii_train', 0.1),
    ('coco_train_2014_pruned', 0.1),
    ('coco_vitpose_train', 0.1),
    ('mpi_inf_train', 0.02),
    ('ava_train', 0.19),
    ('aic_train', 0.19),
    ('insta_train', 0.2),
)

# HaMeR's mix (via the spec); sums to 1.0. FreiHAND is the project's own converter's records
# of the raw download (the freihand evaluator needs its test split anyway).
HAMER = (
    ('freihand', 0.25),
    ('interhand26m_train', 0.25),
    ('mtc_train', 0.1),
    ('rhd_train', 0.05),
    ('coco_wholebody_train', 0.1),
    ('halpe_train', 0.05),
    ('mpii_nzsl_train', 0.05),
    ('ho3d_train', 0.05),
    ('h2o3d_train', 0.05),
    ('dexycb_train', 0.05),
)

# OUR CHOICE (no weight in the spec): the one video dataset gets 0.5 against the image mix's
# 1.0, i.e. a third of the clips, so every batch of 32 holds ~10 real clips for the temporal
# attention while HMR 2.0's / HaMeR's proportions among the images stay as published.
VIDEO_SHARE = 0.5

# ExtPose's body mix: 3DPW clips + HMR 2.0's images (paper.md: "3DPW, Human3.6M, MPI-INF-3DHP
# and COCO, following WHAM and HMR 2.0"; the rest of HMR 2.0's mix is kept).
BODY = (('3dpw', VIDEO_SHARE),) + HMR2
# The hand video mix: HInt's sequences (our choice of video part, as before this mixture
# existed) + HaMeR's images. The image hand model trains on HaMeR's mix as published.
HAND_VIDEO = (('hint', VIDEO_SHARE),) + HAMER


def names(mixture) -> tuple:
    return tuple(name for name, _ in mixture)


def set_paper_mixture(c, mixture, video: str = '') -> None:
    """c.data.datasets = mixture; every dataset but `video` enters as single frames."""
    c.data.datasets = mixture
    c.data.as_images = tuple(n for n in names(mixture) if n != video)
