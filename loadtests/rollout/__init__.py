"""The rollout, from a load-test report to production: capacity and cost per variant (`plan`), the regression gate
between two runs (`compare`), and the Kustomize overlay sized from the plan (`deploy`)."""
