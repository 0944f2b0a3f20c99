"""The simulated board: HAL backed by a plant model (EV, battery, meter, grid)."""
