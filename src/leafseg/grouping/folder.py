"""Former home of the folder runner, now :mod:`leafseg.eval.pseudo_mask_folder`.

The runner scores regions with the evaluation metrics, and grouping sits below evaluation. This alias
keeps ``from leafseg.grouping.folder import pseudo_mask_folder`` working until its last caller
imports from the new home; it is then deleted (the layering test names it as the one allowed import
from grouping into eval until then).
"""

from leafseg.eval.pseudo_mask_folder import FolderResult, pseudo_mask_folder

__all__ = ["FolderResult", "pseudo_mask_folder"]
