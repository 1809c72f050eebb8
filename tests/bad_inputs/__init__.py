"""The bad-input corpus (issue #18): every kind of bad input and fault that mlpot must answer with a
clear error (exit status 2, a message naming the file and the key or frame), never a traceback, a
NaN model, a silent accept or a damaged file. ``corpus.py`` builds the cases; ``tests/test_bad_inputs.py``
runs them. ``python -m tests.bad_inputs.corpus`` prints the table of cases and their messages.
"""
