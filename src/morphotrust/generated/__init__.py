"""Generated images that do not come from the workflow's own generator: `morphotrust generated <command> ...`
(workflow/rules/generated.smk). Every source writes results/generated/{source}/manifest.parquet (+ canonical TIFFs
under images/); config `generated.source` picks the one the features and trust stages score.

- standins.py     demo STAND-INS from held-out real sites (copies, wrong labels, blur, drift): not a generator
- external.py     images from another generator, checked and converted; the real reference rebuilt like them
- layouts.py      how external images and their conditions are found (manifest, pattern, a peer's preset)
- formats.py      the file formats and value ranges external images come in
- peer_copies.py  real held-out sites written in a peer's format: the known-answer check of external
- cli.py          the command line (standins, external, peer-copies)
"""

from .layouts import ExternalSettings, settings_of

__all__ = ["ExternalSettings", "settings_of"]
