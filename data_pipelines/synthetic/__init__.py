"""The synthetic world: everything needed to train and test with nothing licensed or downloaded.

Real runs read licensed body-model files and downloaded datasets; a fresh machine has neither.
This package builds stand-ins for both, in the exact on-disk formats of the real ones, so that
the loaders and the raw -> record converters in `data_pipelines` meet the same files either way
and never know which they got. Nothing outside this package imports it except the places that
build the default (run_train.py, the benchmarks) and the tests.

Body models (procedural, not derived from the licensed models):
    sdf.py            signed distance functions the meshes are fitted to
    mesh.py           cage modelling, Catmull-Clark, edge splits, fitting a mesh to an SDF
    anatomy.py        skeletons, cages and SDF shapes of the synthetic bodies and hands
    rigging.py        skinning weights, joint regressors, pose correctives
    bodies.py         SMPL model dicts with the official keys, shapes and vertex ids (+ J19)
    mano_model.py     the MANO right hand's model dict, made the same way
    body_files.py     those models as .pkl / .npz files in the official byte format; a CLI
    legacy_pickle.py  Python-2 pickles in the byte format of the official files

Raw datasets in the real layouts (rendered from those models; one module per dataset):
    render.py         a small CPU mesh renderer (depth-sorted, shaded; mask and depth)
    imaging.py        the rest of an image: textures, backgrounds, planes, occluders, blur
    raw_common.py     what the writers share: per-item random streams, sizes, file writes
    hands.py          hand designs shared by FreiHAND and HInt: grasp, orientation, forearm
    raw_3dpw.py       3DPW: people walking and gesturing under a moving camera
    raw_freihand.py   FreiHAND v2: one right hand, four versions per training image
    raw_hint.py       HInt: one or two hands, keypoint occlusion from the depth map
    world.py          all of it in one call (body models + the three datasets); the CLI

The cached default:
    default_data.py   the raw datasets converted to records by the real converters, cached
    demo_video.py     its demo/: a 3DPW test sequence as a video + OpenPose JSON, for inference

    python -m data_pipelines.synthetic.world --out DIR [--seed S] [--size tiny|small|large]
    python -m data_pipelines.synthetic.body_files --out DIR [--seed S]
"""
