"""How the models are made: recipes, data and degradations, the three training stages, the loop.

Imports `rsd` only; nothing imports `training` except the `rsd` command (rsd_cli).
"""
