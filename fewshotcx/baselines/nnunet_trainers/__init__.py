"""nnU-Net trainer classes that fewshotcx points nnU-Net at (through its ``nnUNet_extTrainer`` variable).

This folder is searched by nnU-Net itself, which imports :mod:`.budget` as a top-level module; nothing
in fewshotcx imports it directly, so importing fewshotcx never imports nnunetv2.
"""
