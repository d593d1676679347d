"""Typed stub of the compiled columnar kernels (``ext/tiergate/_native/columns.pyx``).

Same functions, arguments and results as :mod:`tiergate.engine.columns`, whose
declarations are the one statement of them.
"""

from tiergate.engine.columns import BAD_CATEGORY as BAD_CATEGORY
from tiergate.engine.columns import BAD_KIND as BAD_KIND
from tiergate.engine.columns import BAD_SENDER_INDEX as BAD_SENDER_INDEX
from tiergate.engine.columns import BAD_TEMPLATE_INDEX as BAD_TEMPLATE_INDEX
from tiergate.engine.columns import LAYOUT as LAYOUT
from tiergate.engine.columns import NO_CATEGORY as NO_CATEGORY
from tiergate.engine.columns import NO_TEMPLATE as NO_TEMPLATE
from tiergate.engine.columns import REASONS as REASONS
from tiergate.engine.columns import alias_keys as alias_keys
from tiergate.engine.columns import check_items as check_items
from tiergate.engine.columns import encode_recipients as encode_recipients
from tiergate.engine.columns import encode_ticket as encode_ticket
from tiergate.engine.columns import finish as finish
from tiergate.engine.columns import prepare as prepare
from tiergate.engine.columns import remember_keys as remember_keys
from tiergate.engine.columns import repeated_keys as repeated_keys
from tiergate.engine.columns import siphash24 as siphash24
from tiergate.engine.columns import tally as tally
from tiergate.engine.columns import time_bounds as time_bounds
from tiergate.engine.columns import undeliverable as undeliverable
