"""The worker set-up hook: what a process that embeds needs set before it decodes or runs torch.

Process-wide state is set here and nowhere deeper: the Beam DoFn's `setup`, the Spark executor's
first task and the --large-model server process call `set_up_worker` once; library code (the
embedder, the encoders) takes values as arguments and leaves the process as it found it.
"""

from __future__ import annotations

import logging

from pipelines.embed.settings import EmbedSettings
from pipelines.threads import ThreadLayout
from pipelines.threads import apply as apply_threads

log = logging.getLogger(__name__)


def set_up_worker(settings: EmbedSettings, threads: ThreadLayout) -> None:
    """Idempotent: transformers' progress bars off; torch's intra-op threads set to this process's
    share (`threads`: its role's layout; pipelines/threads.py decides); PIL's decompression-bomb
    limit never stricter than --max-image-pixels (PIL refuses images above 2 x MAX_IMAGE_PIXELS
    inside Image.open; the limit is only raised, so other caps in the process hold)."""
    from PIL import Image
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    apply_threads(threads)
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, settings.max_image_pixels)
