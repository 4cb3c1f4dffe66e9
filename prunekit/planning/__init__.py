"""Planning: from scores to kept channels (``selection``), to a plan for every member tensor
(``plans``), within a FLOPs or parameter budget (``budgets``)."""
