"""Pyboard v1.1 class controller (STM32F405): the HAL on `machine`/`pyb`.

Compiled with mpy-cross in CI; it runs only on the board (no `machine` elsewhere).
"""
