"""Analysis of finished runs: figures (:mod:`.plots`), the numbers behind them
(:mod:`.measures`), the ``fdrl plot`` report (:mod:`.report`) and probes on frozen
embeddings (:mod:`.probe`)."""
