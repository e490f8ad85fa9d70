//! DMA memory (to be written).
