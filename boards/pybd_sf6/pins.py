"""Pin and peripheral assignment of the PYBD-SF6 controller carrier.

Names are the PYBD's X/Y pins (MicroPython's ports/stm32/boards/PYBD_SF6/pins.csv). The
carrier keeps the pyboard controller's circuits; where the PYBD has no such pin or routes
another peripheral there, the assignment moves (noted). Change here only together with the
carrier schematic: the contactor and the pilot are safety outputs.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

# Control pilot: TIM2 CH1 on X1 (PA0) drives the +/-12 V pilot buffer at 1 kHz; the buffered
# pilot comes back through the divider to ADC X7 (PA6; the PYBD has no X19).
CP_PWM = 'X1'
CP_TIMER = const(2)
CP_CHANNEL = const(1)
CP_FREQ_HZ = const(1000)
CP_ADC = 'X7'
# Divider and offset of the pilot sense: mV at the pilot = (adc_mv - CP_OFFSET_MV) * CP_GAIN_NUM // CP_GAIN_DEN
CP_OFFSET_MV = const(1650)
CP_GAIN_NUM = const(12000)
CP_GAIN_DEN = const(1500)
# Proximity pilot sense (cable rating resistor) on ADC X8 (PA7; the PYBD has no X20)
PP_ADC = 'X8'

# Contactor: coil driver on Y9 (high = close), auxiliary contact on Y10 (low = closed).
CONTACTOR_OUT = 'Y9'
CONTACTOR_FB = 'Y10'

# RS-485 meter: Y1/Y2 are PA9/PA10 on the PYBD, USART1 (UART 6 on the pyboard); driver
# enable on Y3 (high = transmit).
RS485_UART = const(1)
RS485_DE = 'Y3'

# CAN 2 on Y5/Y6 (MICROPY_HW_CAN2_TX/RX in the PYBD_SF6 build), as on the pyboard carrier.
CAN_BUS = const(2)

# Host link: USB stays the REPL; the link runs on UART 2 (X3/X4, PA2/PA3).
LINK_UART = const(2)
LINK_BAUD = const(115200)

# EVSE power stage temperature: NTC divider on ADC X11 (PC4).
TEMP_ADC = 'X11'

WDT_TIMEOUT_MS = const(2000)

# Cooling loop: pump (or fan) relay driver on Y11 (high = run), tachometer or flow switch on
# Y12 (open collector, pulled up; counted on falling edges), as on the pyboard carrier.
COOLING_OUT = 'Y11'
COOLING_TACH = 'Y12'

# Status LED: the PYBD's RGB LED (pyb.LED 1 red, 2 green, 3 blue). status_led colour -> the
# LEDs lit, bit i = pyb.LED(i + 1): green, blue, amber (red + green), red, cyan (green + blue)
LED_COUNT = const(3)
LED_BITS = b'\x02\x04\x03\x01\x06'
