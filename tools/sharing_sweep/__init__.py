"""The hash-sharing acceptance sweep behind reports/hash_sharing.{json,md,png} (entry point:
tools/hash_sharing_sweep.py, whose docstring describes the sweep and its flags).

Modules, in the order a run uses them:
    common      constants, the `lowprec` CLI runner, paths and small lookups shared by the others
    data        write the data sets with the CLI; the id-coverage statistics of each
    jobs        the job list per data set, the process pool that runs it, DeLong against dense
    models      worker side: train / convert / evaluate one model (`run_job`)
    scoring     what `lowprec eval` computes, paired DeLong, predictions against the float model
    projection  prototype count-weighted projection of an exact-ROBE model
    timing      exact ROBE (torch) vs aligned ROBE on the FBGEMM TBE, lookup speed
    acceptance  the done-when checks from the JSON
    check       reproducibility: rerun recorded CLI commands, or compare two full runs
    report, sections, markdown, plots, text   Markdown + PNG from the JSON only
    cli         the argument parser and `main`
"""
