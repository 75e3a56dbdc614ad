"""Blinded reader studies of SR against interpolation: a static browser study, and its statistics.

`make_study` turns folders of volumes (one folder per method, matching file names) into a self-contained folder
(index.html + viewer + one data script per item) that opens from disk with no network; the blinding key (which
label is which method) is written outside that folder. `analyse` reads the readers' exported answers against
the key and writes preference rates, Likert means, agreement and timing as Markdown + PNG.
"""
