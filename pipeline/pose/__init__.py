"""Poses: the OpenPose-18 skeleton, pose maps, the keypoint estimators (openpifpaf,
BlazePose) and their factory, annotation QA, and drawing skeletons and grids."""
