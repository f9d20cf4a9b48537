"""Interactive refinement of a contour: boxes, clicks and scribbles (:class:`~fewshotcx.session.ContourSession`'s
``add_box``, ``add_point``, ``add_scribble``), as pure functions on canonical arrays.

* :mod:`.prompts`: the interactions, checked in the image's own voxel order, kept canonical;
* :mod:`.refine`: one interaction's effect (a random walker with a prior on a region of interest);
* :mod:`.walker`: the random walker itself (scipy);
* :mod:`.layer`: the fold of every interaction over the starting contour, memoised for undo;
* :mod:`.completion`: the drawn-slice completion and ``suggest`` (a mixin of the session).
"""

from .prompts import Prompt
from .refine import Settings

__all__ = ["Prompt", "Settings"]
