"""Selection: from scores to kept channels (``channels``), to a plan for every member tensor
(``group_plans``), within a FLOPs, parameter or latency budget (``budgets``, ``widths``); the
proposal a method hands on (``proposal``)."""
