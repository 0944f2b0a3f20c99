# Runs first on every reset. Kept empty of logic: a fault here would stop the board before
# the controller could put the outputs in their safe state.
