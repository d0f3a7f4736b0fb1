"""remd_core: the library behind the Re-M3Dr research workbench.

Re-M3Dr (Rebalanced MultiModal Mean Deviation Regression; seed paper 001) regresses visual-field
Mean Deviation from OCT B-scans plus a colour fundus photograph under coupled data and learning
imbalance.
"""

__version__ = "0.1.0"
