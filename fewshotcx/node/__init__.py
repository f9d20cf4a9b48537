"""A DICOM node for the clinic (``fewshotcx listen``): a Storage SCP that receives CT series, contours
each with a Segmenter fitted once on the site's plan library, and C-STOREs the RTSTRUCT to a PACS or
planning system (and, optionally, writes it to an outbox folder). See docs/dicom-node.md.

- :mod:`.config`: AE titles, peers (``AE@HOST:PORT``) and the node's settings;
- :mod:`.library`: the plan library (one folder per prior patient: a CT series and one RTSTRUCT);
- :mod:`.inbox`: received files in a private temporary folder, grouped into series;
- :mod:`.worker`: the queue and the thread that contours one series at a time and sends the result;
- :mod:`.scp`: the pynetdicom Storage SCP that ties them together (:class:`Node`);
- :mod:`.send`: the C-STORE SCU.
"""

from .config import NodeConfig, Peer, check_ae_title, parse_peer
from .library import library_plans
from .scp import Node

__all__ = ["Node", "NodeConfig", "Peer", "check_ae_title", "library_plans", "parse_peer"]
