"""Everything that knows Ray: preprocessing jobs, Ray Train workers, the Tune driver, the CLIs."""
