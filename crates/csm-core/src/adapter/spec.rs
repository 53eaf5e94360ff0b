//! What is adapted: the projections and layers a LoRA spec selects, and the
//! operations over a model's projections (attach, merge, collect).

use std::collections::BTreeMap;

use mlx_rs::module::{ModuleParameters, Parameter};
use mlx_rs::Array;
use serde::{Deserialize, Serialize};

use super::{mlx_err as mlx, AdapterError};
use crate::model::proj::Proj;
use crate::model::Csm;

/// The seven projections LoRA can adapt.
pub const ALL_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Which layers of each stack get adapters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetLayers {
    /// Backbone layer indices (`None` = all).
    pub backbone: LayerSet,
    /// Depth-decoder layer indices (`None` = all).
    pub decoder: LayerSet,
}

/// A set of layer indices of one stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerSet {
    /// Every layer of the stack.
    All,
    /// No layer of the stack.
    None,
    /// These indices.
    Some(Vec<usize>),
}

impl LayerSet {
    /// Whether layer `i` (of a stack with `n` layers) is selected.
    pub fn contains(&self, i: usize) -> bool {
        match self {
            LayerSet::All => true,
            LayerSet::None => false,
            LayerSet::Some(v) => v.contains(&i),
        }
    }

    /// The highest index named, if any (checked against the model's depth).
    pub fn max_index(&self) -> Option<usize> {
        match self {
            LayerSet::Some(v) => v.iter().copied().max(),
            _ => None,
        }
    }
}

impl TargetLayers {
    /// Every layer of both stacks.
    pub fn all() -> Self {
        TargetLayers {
            backbone: LayerSet::All,
            decoder: LayerSet::All,
        }
    }

    /// Parses `--target-layers`: `all`, or a comma list of `STACK:SPEC`
    /// where STACK is `backbone` or `decoder` and SPEC is `all`, `none`, an
    /// index `3`, a range `8-15`, or several joined by `+` (`0-3+12-15`).
    /// A stack not named gets no adapters. Bare indices are refused, because
    /// they would be ambiguous between the two stacks.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(TargetLayers::all());
        }
        let mut out = TargetLayers {
            backbone: LayerSet::None,
            decoder: LayerSet::None,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (stack, spec) = part.split_once(':').ok_or_else(|| {
                format!(
                    "`{part}`: name the stack, e.g. `backbone:{part}` or `decoder:{part}` (backbone layers 0-15 and decoder layers 0-3 are different layers)"
                )
            })?;
            let set = parse_layer_spec(spec.trim()).map_err(|e| format!("`{part}`: {e}"))?;
            match stack.trim().to_ascii_lowercase().as_str() {
                "backbone" => out.backbone = set,
                "decoder" => out.decoder = set,
                other => {
                    return Err(format!(
                        "`{other}` is not a stack; use `backbone` or `decoder`"
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Inverse of [`TargetLayers::parse`].
    pub fn to_arg(&self) -> String {
        if *self == TargetLayers::all() {
            return "all".into();
        }
        let spec = |set: &LayerSet| match set {
            LayerSet::All => "all".to_string(),
            LayerSet::None => "none".to_string(),
            LayerSet::Some(v) => v
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("+"),
        };
        format!(
            "backbone:{},decoder:{}",
            spec(&self.backbone),
            spec(&self.decoder)
        )
    }
}

fn parse_layer_spec(spec: &str) -> Result<LayerSet, String> {
    match spec.to_ascii_lowercase().as_str() {
        "all" => return Ok(LayerSet::All),
        "none" => return Ok(LayerSet::None),
        _ => {}
    }
    let mut v = Vec::new();
    for item in spec.split('+') {
        let item = item.trim();
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{t}` is not a layer index"))
        };
        if let Some((a, b)) = item.split_once('-') {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("range `{item}` is empty"));
            }
            v.extend(a..=b);
        } else {
            v.push(num(item)?);
        }
    }
    v.sort_unstable();
    v.dedup();
    Ok(LayerSet::Some(v))
}

/// What to adapt and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// Rank.
    pub r: usize,
    /// Scale numerator (`scale = alpha / r`).
    pub alpha: f32,
    /// Dropout on the adapter input (training only).
    pub dropout: f32,
    /// Projection names (`q_proj`, ...).
    pub modules: Vec<String>,
    /// Layers per stack.
    pub layers: TargetLayers,
    /// Whether adapted projections carry a trained bias.
    pub bias: bool,
}

impl LoraSpec {
    /// `alpha / r`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.r as f32
    }
}

/// Calls `f(canonical_prefix, module_name, proj)` for every projection of
/// both stacks (`backbone.layers.3.self_attn.q_proj`, `"q_proj"`, ...).
pub fn for_each_proj(
    model: &mut Csm,
    mut f: impl FnMut(&str, &str, &mut Proj) -> Result<(), AdapterError>,
) -> Result<(), AdapterError> {
    for (stack_name, stack) in [
        ("backbone", &mut model.backbone),
        ("decoder", &mut model.decoder),
    ] {
        for (i, layer) in stack.layers.iter_mut().enumerate() {
            let attn = &mut layer.self_attn;
            let mlp = &mut layer.mlp;
            let projs: [(&str, &str, &mut Proj); 7] = [
                ("self_attn", "q_proj", &mut attn.q_proj),
                ("self_attn", "k_proj", &mut attn.k_proj),
                ("self_attn", "v_proj", &mut attn.v_proj),
                ("self_attn", "o_proj", &mut attn.o_proj),
                ("mlp", "gate_proj", &mut mlp.gate_proj),
                ("mlp", "up_proj", &mut mlp.up_proj),
                ("mlp", "down_proj", &mut mlp.down_proj),
            ];
            for (block, name, proj) in projs {
                f(
                    &format!("{stack_name}.layers.{i}.{block}.{name}"),
                    name,
                    proj,
                )?;
            }
        }
    }
    Ok(())
}

fn check_layers(set: &LayerSet, stack: &'static str, count: usize) -> Result<(), AdapterError> {
    match set.max_index() {
        Some(index) if index >= count => Err(AdapterError::LayerOutOfRange {
            stack,
            index,
            count,
        }),
        _ => Ok(()),
    }
}

/// Freezes the whole model, then attaches fresh adapters (`B = 0`) to the
/// projections `spec` selects. Returns the number of adapted projections.
/// Seed MLX's random state first for a reproducible `A`.
pub fn attach(model: &mut Csm, spec: &LoraSpec) -> Result<usize, AdapterError> {
    check_layers(
        &spec.layers.backbone,
        "backbone",
        model.backbone.layers.len(),
    )?;
    check_layers(&spec.layers.decoder, "decoder", model.decoder.layers.len())?;
    model.freeze_parameters(true);
    let mut count = 0;
    for_each_proj(model, |prefix, name, proj| {
        let (stack, layer) = stack_and_layer(prefix);
        let set = if stack == "backbone" {
            &spec.layers.backbone
        } else {
            &spec.layers.decoder
        };
        if set.contains(layer) && spec.modules.iter().any(|m| m == name) {
            proj.attach_lora(spec.r as i32, spec.alpha, spec.dropout, spec.bias)
                .map_err(mlx(prefix))?;
            count += 1;
        }
        Ok(())
    })?;
    Ok(count)
}

fn stack_and_layer(prefix: &str) -> (&str, usize) {
    let mut parts = prefix.split('.');
    let stack = parts.next().unwrap_or_default();
    let layer = parts
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    (stack, layer)
}

/// The adapter's tensors by canonical name (`...q_proj.lora_a`, `.lora_b`,
/// and `.bias` where trained).
pub fn adapter_tensors(model: &Csm) -> BTreeMap<String, Array> {
    model
        .trainable_parameters()
        .flatten()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Folds every adapter into its base weight (see [`Proj::merge_lora`]).
pub fn merge(model: &mut Csm) -> Result<(), AdapterError> {
    for_each_proj(model, |prefix, _, proj| {
        proj.merge_lora().map_err(mlx(prefix))
    })
}

/// Marks every adapter parameter trainable again (after `freeze_parameters`
/// on a loaded model, e.g. when resuming).
pub fn unfreeze_adapters(model: &mut Csm, bias: bool) -> Result<(), AdapterError> {
    for_each_proj(model, |_, _, proj| {
        if proj.has_lora() {
            proj.lora_a.unfreeze(false);
            proj.lora_b.unfreeze(false);
            if bias {
                proj.bias.unfreeze(false);
            }
        }
        Ok(())
    })
}

/// The projection of `csm` called `name` (canonical name without the
/// parameter suffix), e.g. `decoder.layers.1.mlp.down_proj`.
pub fn proj_mut<'a>(csm: &'a mut Csm, name: &str) -> Option<&'a mut Proj> {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["projection"] => Some(&mut csm.projection),
        ["codebook0_head"] => Some(&mut csm.codebook0_head),
        [stack, "layers", index, group, proj] => {
            let llama = match *stack {
                "backbone" => &mut csm.backbone,
                "decoder" => &mut csm.decoder,
                _ => return None,
            };
            let layer = llama.layers.get_mut(index.parse::<usize>().ok()?)?;
            match (*group, *proj) {
                ("self_attn", "q_proj") => Some(&mut layer.self_attn.q_proj),
                ("self_attn", "k_proj") => Some(&mut layer.self_attn.k_proj),
                ("self_attn", "v_proj") => Some(&mut layer.self_attn.v_proj),
                ("self_attn", "o_proj") => Some(&mut layer.self_attn.o_proj),
                ("mlp", "gate_proj") => Some(&mut layer.mlp.gate_proj),
                ("mlp", "up_proj") => Some(&mut layer.mlp.up_proj),
                ("mlp", "down_proj") => Some(&mut layer.mlp.down_proj),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_layers_parse_and_print() {
        assert_eq!(TargetLayers::parse("all").unwrap(), TargetLayers::all());
        let t = TargetLayers::parse("backbone:8-10+15, decoder:none").unwrap();
        assert_eq!(t.backbone, LayerSet::Some(vec![8, 9, 10, 15]));
        assert_eq!(t.decoder, LayerSet::None);
        assert_eq!(TargetLayers::parse(&t.to_arg()).unwrap(), t);
        // A stack that is not named gets nothing.
        let d = TargetLayers::parse("decoder:all").unwrap();
        assert_eq!(d.backbone, LayerSet::None);
        assert!(TargetLayers::parse("0-3")
            .unwrap_err()
            .contains("name the stack"));
        assert!(TargetLayers::parse("backbone:3-1").is_err());
        assert!(TargetLayers::parse("head:1").is_err());
    }
}
