"""SimPool Serve: export and serve SimPool (Psomas et al., ICCV 2023) models.

The code lives in the repository's top-level folders (``models/``, ``export/``,
``service/``, ``client/``); installed, they are the sub-packages of this one.
"""

__version__ = "0.1.0"
