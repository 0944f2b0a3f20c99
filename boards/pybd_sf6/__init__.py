"""PYBD-SF6 class controller (STM32F767): the pyboard HAL with this board's pin map.

Compiled with mpy-cross in CI; it runs only on the board (no `machine` elsewhere).
"""
