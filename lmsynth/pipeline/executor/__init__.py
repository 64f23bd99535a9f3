"""The executor: the only code that knows distilabel (and, through it, `datasets` and `multiprocessing`).

It turns a window of rows and a run plan into finished rows (`window.execute`). Every change to a framework's private
internals lives in `patches`, applied explicitly and checked against the version it was written for.
"""
