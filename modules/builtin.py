"""The stages of this repository: importing this module registers them, one line per stage file.

A stage added inside the tree is its file (the class, ``@register`` above it) and its line here; a stage
from outside the tree registers through a plugin instead (``plugins.py``).
"""
import modules.transformation  # noqa: F401  None, TPS
import modules.feature_extraction  # noqa: F401  VGG, RCNN, ResNet
import modules.vit  # noqa: F401  ViT
import modules.svtr  # noqa: F401  SVTR
import modules.crnn  # noqa: F401  CRNN (a feature and a sequence stage)
import modules.sequence_modeling  # noqa: F401  None, BiLSTM
import modules.prediction  # noqa: F401  CTC, Attn
import modules.parseq  # noqa: F401  PARSeq
import modules.vitstr  # noqa: F401  ViTSTR
