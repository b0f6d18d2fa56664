"""Shipped planner profiles (YAML). Installed as the package qwdeploy._profiles."""
