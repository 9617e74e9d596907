"""During-generation trust: `morphotrust generation_trust <command> ...` (workflow/rules/generation_trust.smk).

- translator.py  the translator g from a generator block's hidden state to encoder features
- stage.py       per-step thresholds, early abandonment during sampling, the comparison with the post-generation
                 decisions of the same samples and the selection gain (tables and summary)
- cli.py         the command line (translator, generation-trust)

It runs the workflow's own generator (morphotrust.generator) and the fitted trust scorer (morphotrust.trust).
"""
