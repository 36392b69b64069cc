//! The test vectors of `shared/reference/torch-randn.md` §9 (made by a NumPy model that was
//! checked bit for bit against torch 2.8.0, CI has no torch): raw MT19937 words, single
//! Box–Muller lanes, and whole tensors by their SHA-256, first values and last bits.

use sha2::{Digest, Sha256};

use super::*;

#[test]
fn seeding_uses_the_low_32_bits_and_draws_the_reference_words() {
    let cases: [(u64, [u32; 5]); 4] = [
        (
            0,
            [2357136044, 2546248239, 3071714933, 3626093760, 2588848963],
        ),
        (
            42,
            [1608637542, 3421126067, 4083286876, 787846414, 3143890026],
        ),
        (
            156680208700286,
            [3896898937, 1256837086, 1387127070, 3012561861, 488802877],
        ),
        (
            4096709502,
            [3896898937, 1256837086, 1387127070, 3012561861, 488802877],
        ),
    ];
    for (seed, words) in cases {
        let mut g = CpuGenerator::manual_seed(seed);
        let got: Vec<u32> = (0..5).map(|_| g.mt.next_u32()).collect();
        assert_eq!(got, words, "seed {seed}");
    }
}

/// `d[j] = k1·2^-24` (the radius lane) and `d[j+8] = k2·2^-24` (the angle lane), and the two
/// outputs' bits. The last three rows come out differently without the fused multiply-adds.
#[test]
fn one_box_muller_lane_matches_torch_bit_for_bit() {
    let lanes: [(u32, u32, u32, u32); 9] = [
        (0, 0, 0x0000_0000, 0x0000_0000),
        (1, 1, 0x39b5_04f3, 0x2f0e_2c19),
        (2, 4194304, 0xadbb_bd2e, 0x3a00_0000),
        (8388608, 8388608, 0xbf96_b55f, 0xb3dd_0bb7),
        (16777215, 12582912, 0x3393_b662, 0xc0b8_9456),
        (6601320, 16777215, 0x3f80_0000, 0xb4a2_2169),
        (6366050, 14655794, 0x3f2f_3803, 0xbf32_6eeb),
        (5116836, 6364877, 0xbf1e_99cf, 0x3f16_1c30),
        (12345678, 1815751, 0x3fa2_6757, 0x3f83_552a),
    ];
    let scale = 1.0 / 16_777_216.0;
    for (k1, k2, cos_bits, sin_bits) in lanes {
        let (cos, sin) = box_muller_lane(k1 as f32 * scale, k2 as f32 * scale);
        assert_eq!(
            (cos.to_bits(), sin.to_bits()),
            (cos_bits, sin_bits),
            "k1 {k1}, k2 {k2}"
        );
    }
}

/// One row of `vectors.txt`: `torch.manual_seed(seed); torch.randn(shape)` summarised.
struct Vector {
    seed: u64,
    shape: Vec<usize>,
    sha256: String,
    first: Vec<f32>,
    last_bits: Vec<u32>,
}

/// The 60 whole-tensor vectors (5 seeds × 12 shapes). The first values are printed with 9
/// significant digits, which name one f32 exactly.
fn vectors() -> Vec<Vector> {
    include_str!("vectors.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let cols: Vec<&str> = line.split(" | ").collect();
            let words = |i: usize| cols[i].split_whitespace();
            Vector {
                seed: cols[0].parse().expect("seed"),
                shape: cols[1]
                    .split(',')
                    .map(|d| d.parse().expect("dim"))
                    .collect(),
                sha256: cols[2].to_owned(),
                first: words(3).map(|v| v.parse().expect("value")).collect(),
                last_bits: words(4)
                    .map(|b| u32::from_str_radix(b, 16).expect("bits"))
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn whole_tensors_match_torch_including_tails_and_small_ones() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 60);
    for v in vectors {
        let n: usize = v.shape.iter().product();
        let got = CpuGenerator::manual_seed(v.seed).randn(n);
        let label = format!("seed {}, shape {:?}", v.seed, v.shape);
        assert_eq!(got[..v.first.len()], v.first, "{label}: first values");
        let tail: Vec<u32> = got[n - v.last_bits.len()..]
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(tail, v.last_bits, "{label}: last values");
        let bytes: Vec<u8> = got.iter().flat_map(|v| v.to_le_bytes()).collect();
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, v.sha256, "{label}: sha256");
    }
}

/// A small tensor keeps its unused second normal for the next small one; a large one neither
/// uses nor clears it; re-seeding clears it.
#[test]
fn the_cached_double_survives_calls_until_reseeded() {
    let mut g = CpuGenerator::manual_seed(0);
    let seven = g.randn(7);
    assert!(g.next_double.is_some(), "7 normals leave one of a pair");
    let mut fresh = CpuGenerator::manual_seed(0);
    let eight = fresh.randn(8);
    assert_eq!(seven[..], eight[..7]);
    // The next small call starts with the cached value: the 8th of the pair sequence.
    let big = g.randn(20);
    assert_eq!(big.len(), 20);
    assert_eq!(g.randn(1)[0], eight[7]);
    assert!(CpuGenerator::manual_seed(0).next_double.is_none());
}

#[test]
fn batch_index_draws_one_tensor_per_index_from_one_generator() {
    let per_image = 4 * 9 * 9; // 324: not a multiple of 16, so each call has a tail.
    let mut g = CpuGenerator::manual_seed(7);
    let by_index: Vec<Vec<f32>> = (0..3).map(|_| g.randn(per_image)).collect();
    let got = prepare_noise(7, per_image, 3, Some(&[1, 1, 0]));
    let want: Vec<f32> = [1, 1, 0]
        .iter()
        .flat_map(|&i| by_index[i].clone())
        .collect();
    assert_eq!(got, want);
    let got = prepare_noise(7, per_image, 2, Some(&[0, 2]));
    assert_eq!(got, [by_index[0].clone(), by_index[2].clone()].concat());
    // Without indices: one stream over the batch, which is not two single-image draws here.
    let batch = prepare_noise(7, per_image, 2, None);
    assert_eq!(batch, CpuGenerator::manual_seed(7).randn(2 * per_image));
    assert_ne!(batch[..per_image], by_index[0][..]);
}
