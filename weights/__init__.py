"""The shipped weights and model cards, installed as the package data of ``realtime_lrp.weights``.

setup.cfg maps this folder to that subpackage, so a plain ``pip install .`` (not only an
editable one) carries the shipped model; :func:`realtime_lrp.models.weights_dir` finds it
with ``importlib.resources``.
"""
