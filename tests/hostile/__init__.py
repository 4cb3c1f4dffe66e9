"""Attacks on the promises the README makes, one file per promise (each file's docstring
names its promise): the check (``test_check``), files on disk (``test_files``), plans
(``test_plans``), transactions and optimizers (``test_transactions``), distillation
(``test_distill``), streams and saves (``test_streams_and_saves``), the command line
(``test_cli``), one line for every mistake (``test_mistakes``) and what the engine covers
(``test_coverage``). Every test here failed on the code before its fix."""
