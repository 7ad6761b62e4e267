"""Reports rebuilt from stored trials, without training: tables, figures and REPORT.md (`build`),
seed statistics (`stats`) and the paper's published numbers (`paper`).
"""
