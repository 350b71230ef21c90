"""Training recipes, one file per paper, each reading top to bottom like its paper.

``unimatch_v2``: semi-supervised segmentation (UniMatch V2; FixMatch and labelled-only as options).
"""
