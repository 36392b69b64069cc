//! How much sampling a prompt asks for, to estimate its time before Queue: per sampler, its
//! steps, the latent's pixels and how many images are sampled (one with "first image only").
//! A sampler step's time grows with the latent's pixels; the app turns this into seconds with
//! the pace of the last sampler it saw run.
//!
//! Only latents from EmptyLatentImage (directly, or through latent nodes that keep the size)
//! are sized here; a sampler fed from an encoded image counts as unknown.

use super::prompt::{Prompt, PromptInput};

/// One sampler's work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplerWork {
    pub node: String,
    pub steps: u64,
    /// Latent pixels per image (`width/8 · height/8`).
    pub latent_pixels: u64,
    pub images: u64,
}

impl SamplerWork {
    /// Latent pixels sampled over all steps and images: the unit a pace is measured in.
    pub fn pixel_steps(&self) -> u64 {
        self.steps * self.latent_pixels * self.images
    }
}

/// The samplers of `prompt` whose latent size is known.
pub fn sampler_work(prompt: &Prompt, first_image_only: bool) -> Vec<SamplerWork> {
    let mut out = Vec::new();
    for (id, node) in &prompt.nodes {
        let steps = match node.class_type.as_str() {
            "KSampler" => int(node.input("steps")),
            "KSamplerAdvanced" => {
                let steps = int(node.input("steps"));
                let start = int(node.input("start_at_step")).unwrap_or(0);
                let end = int(node.input("end_at_step")).unwrap_or(u64::MAX);
                steps.map(|s| end.min(s).saturating_sub(start))
            }
            _ => continue,
        };
        let Some(steps) = steps else { continue };
        let Some((pixels, batch)) = latent_size(prompt, node.input("latent_image"), 0) else {
            continue;
        };
        out.push(SamplerWork {
            node: id.clone(),
            steps,
            latent_pixels: pixels,
            images: if first_image_only { 1 } else { batch },
        });
    }
    out
}

fn int(input: Option<&PromptInput>) -> Option<u64> {
    match input? {
        PromptInput::Value(v) => v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)),
        PromptInput::Link { .. } => None,
    }
}

/// Latent pixels per image and batch size of the latent a link carries.
fn latent_size(prompt: &Prompt, input: Option<&PromptInput>, depth: usize) -> Option<(u64, u64)> {
    let PromptInput::Link { node, .. } = input? else {
        return None;
    };
    if depth > 64 {
        return None;
    }
    let n = prompt.get(node)?;
    match n.class_type.as_str() {
        "EmptyLatentImage" => {
            let w = int(n.input("width"))?;
            let h = int(n.input("height"))?;
            let b = int(n.input("batch_size")).unwrap_or(1).max(1);
            Some(((w / 8) * (h / 8), b))
        }
        "RepeatLatentBatch" => {
            let (p, b) = latent_size(prompt, n.input("samples"), depth + 1)?;
            Some((p, b * int(n.input("amount")).unwrap_or(1).max(1)))
        }
        "SetLatentNoiseMask" => latent_size(prompt, n.input("samples"), depth + 1),
        "KSampler" | "KSamplerAdvanced" => latent_size(prompt, n.input("latent_image"), depth + 1),
        _ => None,
    }
}

/// `12 s`, `3 min 20 s`, `1 h 05 min`: an estimate's length, rounded as a person would say it.
pub fn duration_text(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn sampler_work_json(prompt: &Value, first_image_only: bool) -> Vec<SamplerWork> {
        sampler_work(
            &Prompt::from_json(prompt).expect("prompt"),
            first_image_only,
        )
    }

    #[test]
    fn steps_latent_pixels_and_images_per_sampler() {
        let p = json!({
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 4}},
            "5": {"class_type": "KSampler", "inputs": {"steps": 20, "latent_image": ["4", 0]}},
            "6": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["5", 0], "amount": 2}},
            "7": {"class_type": "KSamplerAdvanced", "inputs": {"steps": 30, "start_at_step": 10, "end_at_step": 10000, "latent_image": ["6", 0]}},
            "8": {"class_type": "KSampler", "inputs": {"steps": 20, "latent_image": ["9", 0]}},
            "9": {"class_type": "VAEEncode", "inputs": {}},
        });
        let mut w = sampler_work_json(&p, false);
        w.sort_by(|a, b| a.node.cmp(&b.node));
        assert_eq!(w.len(), 2, "the encoded image's size is unknown");
        assert_eq!(
            (w[0].steps, w[0].latent_pixels, w[0].images),
            (20, 64 * 96, 4)
        );
        assert_eq!(
            (w[1].steps, w[1].images),
            (20, 8),
            "steps 10 to 30, batch 4 × 2"
        );
        assert_eq!(w[0].pixel_steps(), 20 * 64 * 96 * 4);
        let first = sampler_work_json(&p, true);
        assert!(first.iter().all(|s| s.images == 1));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_text(12.4), "12 s");
        assert_eq!(duration_text(200.0), "3 min 20 s");
        assert_eq!(duration_text(3900.0), "1 h 05 min");
    }
}
