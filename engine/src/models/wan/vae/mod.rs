//! Wan VAE
