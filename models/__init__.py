"""SimPool models for export: the head (`simpool`), timm backbones in the paper's placements (`model`),
and checkpoint import (`checkpoint`, `safe_load`, `remote`). Needs torch and timm; the service never
imports this package.
"""
