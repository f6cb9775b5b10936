"""2D teachers distilled into 3D (REFERENCE.md §1, §2): multi-scale CLIP features and relevancy, DINO
features, simulated teachers for scenes with ground truth, and the on-disk feature cache."""
