"""Pin and peripheral assignment of the pyboard v1.1 controller carrier.

Names are the pyboard's silkscreen (X/Y headers). Change here only together with the
carrier schematic: the contactor and the pilot are safety outputs.
"""
try:
    from micropython import const
except ImportError:  # CPython (host tools, tests): const() is the value
    def const(x):
        return x

# Control pilot: TIM2 CH1 on X1 drives the +/-12 V pilot buffer at 1 kHz; the buffered pilot
# comes back through a divider to ADC X19 (0..3.3 V spans -12..+12 V, see CP_* below).
CP_PWM = 'X1'
CP_TIMER = const(2)
CP_CHANNEL = const(1)
CP_FREQ_HZ = const(1000)
CP_ADC = 'X19'
# Divider and offset of the pilot sense: mV at the pilot = (adc_mv - CP_OFFSET_MV) * CP_GAIN_NUM // CP_GAIN_DEN
CP_OFFSET_MV = const(1650)
CP_GAIN_NUM = const(12000)
CP_GAIN_DEN = const(1500)
# Proximity pilot sense (cable rating resistor) on ADC X20
PP_ADC = 'X20'

# Contactor: coil driver on Y9 (high = close), auxiliary contact on Y10 (low = closed).
CONTACTOR_OUT = 'Y9'
CONTACTOR_FB = 'Y10'

# RS-485 meter: UART 6 on Y1/Y2, driver enable on Y3 (high = transmit).
RS485_UART = const(6)
RS485_DE = 'Y3'

# CAN 1 on Y3/Y4 is taken by RS485_DE; the carrier routes CAN 2 on Y5/Y6.
CAN_BUS = const(2)

# Host link: USB VCP stays the REPL; the link runs on UART 2 (X3/X4).
LINK_UART = const(2)
LINK_BAUD = const(115200)

# EVSE power stage temperature: NTC divider on ADC X11.
TEMP_ADC = 'X11'

# Cooling loop: the pump's relay driver on Y11 (high = run); the pump's tachometer (open
# collector, two pulses per revolution) on Y12 with the pull-up, counted on each falling
# edge by a pin IRQ. A flow switch wired to Y12 instead counts once per closure.
COOLING_OUT = 'Y11'
COOLING_TACH = 'Y12'

# Status LED: the pyboard's own LEDs (pyb.LED 1 red, 2 green, 3 yellow = amber, 4 blue);
# cyan is green and blue together.
LED_COUNT = const(4)

WDT_TIMEOUT_MS = const(2000)
