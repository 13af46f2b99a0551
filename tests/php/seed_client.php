<?php
// The seed's PHP backend, as its AIServiceConnector talks to the image service
// (php-curl, 30 s timeouts, json_decode of every reply): start a job with
// /generate-concept, poll /image-status/{job_id} until it is final, fetch the
// image. Used by tests/python/test_php_client.py against a real `easel serve`.
//   php seed_client.php BASE_URL json|form|photo|photo64 [PHOTO]
// photo: the room photo as a CURLFile (multipart/form-data); photo64: base64 in JSON.
// Prints one JSON object with what it saw; exits 1 on any failure.

class AIServiceConnector {
    private $base;
    public $replies = 0;

    public function __construct($base) { $this->base = rtrim($base, '/'); }

    // The seed's makeRequest: POST bodies as JSON (or as a form, as older code
    // paths did with http_build_query), every reply through json_decode.
    public function makeRequest($path, $data = [], $method = 'POST', $form = false) {
        $ch = curl_init($this->base . $path);
        curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
        curl_setopt($ch, CURLOPT_TIMEOUT, 30);
        curl_setopt($ch, CURLOPT_CONNECTTIMEOUT, 5);
        if ($method === 'POST') {
            curl_setopt($ch, CURLOPT_POST, true);
            if ($form === 'multipart') {
                curl_setopt($ch, CURLOPT_POSTFIELDS, $data);  // an array with a CURLFile
            } elseif ($form) {
                curl_setopt($ch, CURLOPT_POSTFIELDS, http_build_query($data));
            } else {
                curl_setopt($ch, CURLOPT_POSTFIELDS, json_encode($data));
                curl_setopt($ch, CURLOPT_HTTPHEADER, ['Content-Type: application/json']);
            }
        }
        $body = curl_exec($ch);
        if ($body === false) throw new Exception('cURL error: ' . curl_error($ch));
        $code = curl_getinfo($ch, CURLINFO_HTTP_CODE);
        curl_close($ch);
        $json = json_decode($body, true);
        if ($json === null) {
            throw new Exception("json_decode failed on $path ($code): " . json_last_error_msg());
        }
        $this->replies++;
        return [$code, $json];
    }

    public function startAsyncConceptualImageGeneration($post_data, $form) {
        [$code, $r] = $this->makeRequest('/generate-concept', $post_data, 'POST', $form);
        if ($code !== 200 || empty($r['success'])) {
            throw new Exception("start failed ($code): " . json_encode($r));
        }
        return ['success' => true, 'job_id' => $r['job_id'], 'status' => $r['status'],
                'prompt' => $r['prompt'], 'prompt_shortened' => $r['prompt_shortened'] ?? null];
    }

    public function checkImageGenerationStatus($job_id) {
        [$code, $r] = $this->makeRequest("/image-status/{$job_id}", [], 'GET');
        if ($code !== 200) throw new Exception("status failed ($code): " . json_encode($r));
        return $r;
    }

    public function fetch($path) {
        $ch = curl_init($this->base . $path);
        curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
        curl_setopt($ch, CURLOPT_TIMEOUT, 30);
        $bytes = curl_exec($ch);
        $code = curl_getinfo($ch, CURLINFO_HTTP_CODE);
        $type = curl_getinfo($ch, CURLINFO_CONTENT_TYPE);
        curl_close($ch);
        return [$code, $type, $bytes];
    }
}

// A multipart body cannot nest arrays: PHP forms name them colors[0], room_analysis[k].
function flatten($data, $prefix = '') {
    $flat = [];
    foreach ($data as $k => $v) {
        $key = $prefix === '' ? $k : "{$prefix}[{$k}]";
        if (is_array($v)) $flat += flatten($v, $key);
        else $flat[$key] = $v;
    }
    return $flat;
}

$base = $argv[1] ?? 'http://127.0.0.1:8080';
$mode = $argv[2] ?? 'json';
$photo = $argv[3] ?? null;
$form = $mode === 'form' ? true : ($mode === 'photo' ? 'multipart' : false);
$ai = new AIServiceConnector($base);
$out = ['mode' => $mode];
try {
    $long = str_repeat('Ein gemütliches Wohnzimmer, 北欧スタイル, café crème – ', 20);  // > 600 bytes
    $post = [
        'room_type' => 'living_room',
        'style' => 'Scandinavian',
        'colors' => ['white', 'light oak', 'crème'],
        'features' => ['large windows', 'Kachelofen'],
        'room_analysis' => ['description' => $long, 'summary' => 'bright, airy'],
        'steps' => 2, 'width' => 64, 'height' => 64,
    ];
    if ($form) unset($post['room_analysis']['summary']);
    if ($mode === 'photo') {
        $post = flatten($post);
        $post['room_image'] = new CURLFile($photo, 'image/jpeg', 'room.jpg');
    } elseif ($mode === 'photo64') {
        $post['room_image'] = base64_encode(file_get_contents($photo));
    }
    $job = $ai->startAsyncConceptualImageGeneration($post, $form);
    $out['job_id'] = $job['job_id'];
    $out['prompt_shortened'] = $job['prompt_shortened'];
    $out['prompt'] = $job['prompt'];
    $deadline = microtime(true) + 60;
    $polls = 0;
    do {
        $st = $ai->checkImageGenerationStatus($job['job_id']);
        $polls++;
        if (empty($st['polling_instructions']['continue_polling'])) break;
        usleep(50000);  // the seed polls every 3 s; the test is impatient
    } while (microtime(true) < $deadline);
    $out['polls'] = $polls;
    $out['status'] = $st['status'];
    $out['disclaimer'] = $st['disclaimer'] ?? null;
    if ($st['status'] !== 'completed') throw new Exception('job ended ' . json_encode($st));
    // check_image_status.php's conceptual_visualization block
    $cv = ['success' => true, 'image_url' => $st['image_url'], 'disclaimer' => $st['disclaimer']];
    [$code, $type, $bytes] = $ai->fetch($cv['image_url']);
    $out['image_url'] = $cv['image_url'];
    $out['image_code'] = $code;
    $out['image_type'] = $type;
    $out['image_png'] = substr($bytes, 0, 8) === "\x89PNG\r\n\x1a\n";
    $out['image_bytes'] = strlen($bytes);
    $out['replies_decoded'] = $ai->replies;
    $out['ok'] = true;
} catch (Exception $e) {
    $out['ok'] = false;
    $out['error'] = $e->getMessage();
}
echo json_encode($out, JSON_UNESCAPED_UNICODE), "\n";
exit($out['ok'] ? 0 : 1);
