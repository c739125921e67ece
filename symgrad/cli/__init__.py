"""The `symgrad` command line (click): derive, build, check, train, predict, evaluate."""
